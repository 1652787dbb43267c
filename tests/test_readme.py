"""The README's quick start runs as written."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_start_runs(tmp_path, monkeypatch, capsys):
  readme = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
  assert blocks, "the README has no python block"
  monkeypatch.chdir(tmp_path)
  exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
  out = capsys.readouterr().out
  assert "QArray(4b, sparse)" in out and "compression ratio vs dense float32" in out
  assert (tmp_path / "mlp.safetensors").stat().st_size > 0
