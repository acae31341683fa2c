"""`simdex COMMAND --help` teaches without loading the heavy parts: no command's help imports torch."""

from __future__ import annotations

import subprocess
import sys

from simdex.cli.main import COMMANDS


def test_no_command_help_imports_torch():
    # one interpreter for every command: each --help runs in-process, then the modules are checked
    code = ("import sys\nfrom click.testing import CliRunner\nfrom simdex.cli.main import main\n"
            f"for name in {sorted(COMMANDS)!r}:\n"
            "    r = CliRunner().invoke(main, [name, '--help'])\n"
            "    assert r.exit_code == 0, (name, r.output)\n"
            "    print(name, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = [line for line in out.stdout.splitlines() if line.endswith("True")]
    assert not loaded, f"--help imported torch from: {loaded[0].split()[0]}"
