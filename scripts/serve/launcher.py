"""Make a plain `torchserve --start` in the repository root read ./config.properties.

TorchServe's Java frontend falls back to ./config.properties when no --ts-config
is given, but its Python launcher (ts/model_server.py) exits first with "Missing
mandatory parameter --model-store" unless --ts-config or --model-store is passed.
This replaces the venv's `torchserve` entry script with one that passes
`--ts-config config.properties` in exactly that case (a --start without
--ts-config, --model-store or TS_CONFIG_FILE, in a folder that has
config.properties) and otherwise runs the launcher unchanged.

    python -m scripts.serve.launcher     (run by `make install`)
"""

from __future__ import annotations

import sys
from pathlib import Path

LAUNCHER = '''#!{python}
# Written by scripts/serve/launcher.py: see its docstring for why.
import os
import sys

from ts.model_server import start

EXPLICIT = ("--ts-config", "--model-store")
if (
    "--start" in sys.argv
    and not any(arg.split("=", 1)[0] in EXPLICIT for arg in sys.argv)
    and "TS_CONFIG_FILE" not in os.environ
    and os.path.isfile("config.properties")
):
    sys.argv += ["--ts-config", "config.properties"]
if __name__ == "__main__":
    sys.exit(start())
'''


def main() -> int:
    target = Path(sys.executable).with_name("torchserve")
    target.write_text(LAUNCHER.format(python=sys.executable))
    target.chmod(0o755)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
