# Generated from src/kelp/aio/transport/__init__.py by scripts/unasync.py; do not edit.
