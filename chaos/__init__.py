"""Worker-kill chaos experiments with a loss ledger.

Probe tasks (``lab.probes``, in the harness core) record every execution in a ledger (``lab.ledger``) that
lives in its own redis-server, outside the fault domain; faults (``chaos.faults``) act on a running Stack
when the ledger shows progress; the pure checker (``chaos.checker``) compares what was sent with what ran.
``lab chaos run|list|suite`` is the CLI and ``chaos.runner.demo_section`` is the entry point the demo
(orchestration/demo.py) calls. See docs/chaos.md.
"""
