"""crosspost's platform adapters: one small module per platform.

Installed as the package `crosspost_adapters`; registered under the entry-point group
`crosspost.adapters`.
"""
