"""funloader/info.py: `funloader info` describes files and reports bad ones with their reason."""
from __future__ import annotations

import json

from funloader.info import main


def test_info_json(sample_jpegs, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    code = main(["--json", str(sample_jpegs[0]), str(bad)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert lines[0]["fun_shape"] == [192, (lines[0]["height"] + 7) // 8, (lines[0]["width"] + 7) // 8]
    assert lines[0]["sampling"] == ["2x2", "1x1", "1x1"]
    assert lines[0]["decoder"] == "libjpeg (progressive JPEG)"  # handed over by our own entropy decoder
    assert lines[1]["error"] == "JPEGDecodeError" and "Not a JPEG" in lines[1]["reason"]
    assert main([str(sample_jpegs[0])]) == 0
