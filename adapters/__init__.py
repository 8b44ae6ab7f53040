"""crosspost's platform adapters: one small module per platform (installed as crosspost_adapters)."""
