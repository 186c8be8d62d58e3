"""The bulk SQL sink: its schema guard (schema.py) and the sink (sink.py)."""
