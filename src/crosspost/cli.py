"""The `crosspost` command. Exit codes: 0 ok, 1 bad input or refused, 2 usage."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

from crosspost.campaigns import campaign_table, load_campaigns
from crosspost.delivery import Delivery, DeliveryState, PostRecord
from crosspost.errors import ConfigError, CrosspostError, InputError, Problem
from crosspost.intake import Checked, Intake, with_year
from crosspost.post import Post
from crosspost.postfile import SUFFIXES, read_post_file
from crosspost.queue import Queue
from crosspost.settings import Settings, load_settings
from crosspost.targets import Targets, load_targets

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"crosspost: {message}\n")


class App:
    """What a command needs, opened lazily so `--help` needs no database or config."""

    def __init__(self, settings: Settings, out: TextIO) -> None:
        self.settings = settings
        self.out = out
        self._queue: Queue | None = None
        self._targets: Targets | None = None

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            if self.settings.database_url is None:
                self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            self._queue = Queue(self.settings.effective_database_url)
            self._queue.upgrade()
        return self._queue

    @property
    def targets(self) -> Targets:
        if self._targets is None:
            self._targets = load_targets(self.settings.targets)
        return self._targets

    def intake(self) -> Intake:
        return Intake(self.targets, self.settings, load_campaigns(self.settings.campaigns_dir))

    def local_time(self, target: str, at: datetime) -> str:
        zone = self.targets[target].zone if target in self.targets else UTC
        return at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def print_json(self, data: Any) -> None:
        print(json.dumps(data, ensure_ascii=False, indent=2), file=self.out)

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()


def _expand(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder stands for the post files directly in it."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES))
        else:
            found.append(path)
    return found


def _right_away(post: Post, now: datetime) -> Post:
    """The post set to go out now (`add --now`), its `{year}` filled with this year."""
    if post.campaign:
        post = with_year(post, now.year)
    return post.model_copy(update={"publish_at": None, "publish_now": True, "campaign": None})


def _check_files(app: App, files: Sequence[Path], now_: bool = False) -> list[Checked]:
    """Every file read and checked; all problems of all files raised together."""
    intake = app.intake()
    now = datetime.now(UTC)
    checked: list[Checked] = []
    problems: list[Problem] = []
    for path in _expand(files):
        try:
            post = read_post_file(path)
            if now_:
                post = _right_away(post, now)
            checked.append(intake.check(post, path.name, now))
        except InputError as exc:
            problems.extend(exc.problems)
    for item in checked:
        problems.extend(item.problems)
    if problems:
        raise InputError(problems)
    return checked


def cmd_add(app: App, args: argparse.Namespace) -> int:
    checked = _check_files(app, args.files, now_=args.now)
    now = datetime.now(UTC)
    results = [app.queue.add(item.new_post(), now) for item in checked]
    if args.json:
        app.print_json([{"outcome": r.outcome, **_post_json(app, r.post)} for r in results])
    for item, result in zip(checked, results, strict=True):
        for warning in item.warnings:
            print(f"warning: {item.source}: {warning}", file=sys.stderr)
        if args.json:
            continue
        app.print(f"{result.post.id}: {result.outcome} ({item.source})")
        for d in result.post.deliveries:
            app.print(f"  {d.target:<20} {d.state:<13} {app.local_time(d.target, d.due_at)}")
    return EXIT_OK


def cmd_preview(app: App, args: argparse.Namespace) -> int:
    intake = app.intake()
    now = datetime.now(UTC)
    failed = False
    for path in _expand(args.files):
        try:
            item = intake.check(read_post_file(path), path.name, now)
        except InputError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        app.print(f"== {item.post_id} ({item.source})")
        for target, rendition in item.renditions.items():
            when = item.schedule.get(target)
            due = app.local_time(target, when) if when else "-"
            flag = " (shortened)" if rendition.shortened else ""
            app.print(
                f"-- {target} [{rendition.platform}, {rendition.language}] "
                f"{rendition.length}/{rendition.limit}{flag}, at {due}"
            )
            app.print(rendition.text)
            for media in rendition.media:
                app.print(f"   [media {media.mime_type or '?'}] alt: {media.alt or '(none)'}")
        for warning in item.warnings:
            app.print(f"warning: {warning}")
        for problem in item.problems:
            app.print(f"problem: {problem}")
        failed = failed or bool(item.problems)
    return EXIT_INPUT if failed else EXIT_OK


def _delivery_json(app: App, d: Delivery) -> dict[str, Any]:
    data = d.as_json()
    data["due_at_local"] = app.local_time(d.target, d.due_at)
    return data


def _post_json(app: App, record: PostRecord, attempts: bool = False) -> dict[str, Any]:
    deliveries = []
    for d in record.deliveries:
        data = _delivery_json(app, d)
        if attempts:
            data["attempt_log"] = [a.as_json() for a in app.queue.attempts(d.id)]
        deliveries.append(data)
    return record.as_json(deliveries)


def cmd_list(app: App, args: argparse.Namespace) -> int:
    records = app.queue.list_posts(
        state=DeliveryState(args.state) if args.state else None,
        target=args.target,
        campaign=args.campaign,
        limit=args.limit,
    )
    if args.json:
        app.print_json([_post_json(app, r) for r in records])
        return EXIT_OK
    for record in records:
        summary = ", ".join(f"{d.target}:{d.state}" for d in record.deliveries)
        app.print(f"{record.id:<40} {record.state:<13} {summary}")
    if not records:
        app.print("(no posts)")
    return EXIT_OK


def cmd_show(app: App, args: argparse.Namespace) -> int:
    record = app.queue.get(args.id)
    if args.json:
        app.print_json({**_post_json(app, record, attempts=True), "post": record.body})
        return EXIT_OK
    app.print(f"{record.id} ({record.source}) — {record.state}")
    for d in record.deliveries:
        app.print(
            f"  {d.target}: {d.state}, due {app.local_time(d.target, d.due_at)},"
            f" {d.attempts} attempt(s)"
        )
        if d.remote_url:
            app.print(f"    {d.remote_url}")
        if d.last_error:
            app.print(f"    last error ({d.last_error_kind}): {d.last_error}")
        for a in app.queue.attempts(d.id):
            detail = a.error_message or a.remote_url or ""
            app.print(
                f"    - {a.started_at:%Y-%m-%d %H:%M:%S}Z {a.outcome}"
                f" {a.http_status or ''} {a.duration_ms}ms {detail}"
            )
    return EXIT_OK


def cmd_cancel(app: App, args: argparse.Namespace) -> int:
    for d in app.queue.cancel(args.id):
        app.print(f"{args.id}: {d.target} cancelled")
    return EXIT_OK


def cmd_retry(app: App, args: argparse.Namespace) -> int:
    for d in app.queue.retry(args.id, datetime.now(UTC), target=args.target):
        app.print(
            f"{args.id}: {d.target} scheduled again, due {app.local_time(d.target, d.due_at)}"
        )
    return EXIT_OK


def cmd_run(app: App, args: argparse.Namespace) -> int:
    from crosspost.scheduler import Service

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("crosspost")
    settings = app.settings
    serve_api = not args.no_api
    if serve_api and settings.api_token is None and settings.api_host != "127.0.0.1":
        print(
            f"crosspost: refusing to serve the API on {settings.api_host}: CROSSPOST_API_TOKEN"
            " is not set. Set a token, or keep CROSSPOST_API_HOST=127.0.0.1 (the default).",
            file=sys.stderr,
        )
        return EXIT_INPUT
    from crosspost.mirror import ensure_mirror_secrets

    for variable in ensure_mirror_secrets(settings, app.targets):
        log.info(
            "made a webhook secret for the mirror in %s (set %s to use your own)",
            settings.generated_secrets_dir / variable,
            variable,
        )
    campaigns = load_campaigns(settings.campaigns_dir)
    service = Service(settings, app.queue, app.targets, campaigns)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = None
    if serve_api:
        from crosspost.api import ApiServer, create_app

        server = ApiServer(
            create_app(settings, app.queue, app.targets, campaigns, service=service),
            settings.api_host,
            settings.api_port,
        )
        server.start()
    service.start()
    log.info(
        "crosspost %s running on %s (%d targets)%s",
        service.worker_id,
        app.queue.engine.url.render_as_string(hide_password=True),
        len(app.targets),
        f"; API and mirror at http://{settings.api_host}:{settings.api_port}/mirror"
        if serve_api
        else "",
    )
    if args.until_idle:
        quiet = 0
        while not stop.wait(0.05):
            quiet = quiet + 1 if service.drained() else 0
            if quiet >= 3:
                break
    else:
        stop.wait()
    service.stop(grace=min(settings.lease_seconds, 60.0))
    if server is not None:
        server.stop()
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(service.outcomes.items())) or "nothing"
    log.info("stopped; this run: %s", counts)
    return EXIT_OK


def cmd_campaigns(app: App, args: argparse.Namespace) -> int:
    campaigns = load_campaigns(app.settings.campaigns_dir)
    zones = [(name, config.zone) for name, config in app.targets.items()]
    rows = campaign_table(campaigns, zones, datetime.now(UTC))
    if args.json:
        app.print_json([row.as_json() for row in rows])
        return EXIT_OK
    for row in rows:
        data = row.as_json()
        app.print(f"{data['id']}: {data['name']} — {data['rule']}")
        for instant in data["next"]:
            app.print(f"  {instant['target']:<20} {instant['local']} ({instant['zone']})")
    return EXIT_OK


def cmd_db(app: App, args: argparse.Namespace) -> int:
    app.queue.upgrade()
    app.print("database is up to date")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crosspost",
        description="Write a post once; publish it on time, exactly once, in the right language"
        " to Facebook Pages, Mastodon and your website.",
        epilog="Exit codes: 0 ok, 1 bad input or refused, 2 usage. See README.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, handler: Callable[[App, argparse.Namespace], int], text: str) -> Any:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    add = command("add", cmd_add, "Validate post files, then queue them.")
    add.add_argument("files", nargs="+", type=Path, metavar="FILE")
    add.add_argument("--json", action="store_true", help="print the queued posts as JSON")
    add.add_argument(
        "--now",
        action="store_true",
        help="publish at once, whatever time or campaign the file names (to try things out)",
    )
    preview = command("preview", cmd_preview, "Show each target's rendition and its problems.")
    preview.add_argument("files", nargs="+", type=Path, metavar="FILE")
    listing = command("list", cmd_list, "List posts, newest first.")
    listing.add_argument("--state", choices=[str(s) for s in DeliveryState])
    listing.add_argument("--target")
    listing.add_argument("--campaign")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    show = command("show", cmd_show, "Show one post: deliveries, attempts, errors.")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    cancel = command("cancel", cmd_cancel, "Cancel the deliveries that have not gone out.")
    cancel.add_argument("id")
    retry = command("retry", cmd_retry, "Re-queue failed, missed or needs-review deliveries.")
    retry.add_argument("id")
    retry.add_argument("--target")
    run = command("run", cmd_run, "Run the scheduler and workers until stopped.")
    run.add_argument("--until-idle", action="store_true", help="publish what is due, then exit")
    run.add_argument(
        "--no-api", action="store_true", help="run workers only: no HTTP API or mirror"
    )
    campaigns = command("campaigns", cmd_campaigns, "List campaigns and their next instants.")
    campaigns.add_argument("--json", action="store_true")
    db = command("db", cmd_db, "Database maintenance.")
    db.add_argument("action", choices=["upgrade"])
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except Exception as exc:  # pydantic's ValidationError: a bad CROSSPOST_* variable
        print(f"crosspost: settings: {exc}", file=sys.stderr)
        return EXIT_INPUT
    app = App(settings, out or sys.stdout)
    try:
        code: int = args.handler(app, args)
        return code
    except BrokenPipeError:  # `crosspost preview … | head`
        sys.stderr.close()
        return EXIT_OK
    except ConfigError as exc:
        print(f"crosspost: configuration: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except CrosspostError as exc:
        print(f"crosspost: {exc}", file=sys.stderr)
        return EXIT_INPUT
    finally:
        app.close()


if __name__ == "__main__":
    sys.exit(main())
