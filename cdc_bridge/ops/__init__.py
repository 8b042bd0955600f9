"""The operator's commands: ``slots``, ``check``, ``init`` and ``status``.

One small module per command group; ``cli_args`` holds their argparse sections and
imports nothing heavy, so ``cdc-bridge --help`` stays fast.
"""
