"""Worker-kill chaos experiments with a loss ledger (issue 5).

Probe tasks (``chaos.probe``) record every execution in a ledger that lives in its own redis-server, outside
the fault domain; faults (``chaos.faults``) act on a running Stack when the ledger shows progress; the pure
checker (``chaos.checker``) compares what was sent with what ran. ``lab chaos run|list|suite`` is the CLI and
``chaos.runner.demo_section`` is the entry point ``lab demo`` calls. See docs/chaos.md.
"""
