# crosspost: the service (scheduler, workers, API and website mirror) in one image.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CROSSPOST_DATA_DIR=/data

RUN useradd --create-home --uid 10001 crosspost \
 && mkdir /data && chown crosspost:crosspost /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY adapters ./adapters
RUN pip install --no-cache-dir .
COPY config ./config

USER crosspost
VOLUME ["/data"]
EXPOSE 8080
CMD ["crosspost", "run"]
