"""Compatibility entry point under the original design's name (see the README's name table).

The command lives in `services.optimizer.index_cli`; this module only forwards to it, so
`python -m services.index_optimizer_cli ...` keeps working.
"""

from services.optimizer.index_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
