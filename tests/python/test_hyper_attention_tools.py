"""Smoke tests (spec §6 item 20): the accuracy evaluation and the LM example run end-to-end on tiny sizes (CPU)."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(rel):
    spec = importlib.util.spec_from_file_location(pathlib.Path(rel).stem, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_accuracy_eval_smoke(tmp_path, capsys):
    ev = _load("bench/python/eval_hyper_attention_accuracy.py")
    out = tmp_path / "acc.json"
    rc = ev.main(["--smoke", "--families", "gaussian,clustered", "--json", str(out), "--threads", "1"])
    text = capsys.readouterr().out
    assert "| family |" in text and "Q1" in text
    rows = json.loads(out.read_text())
    assert len(rows) == 4  # 2 families x causal in {no, yes}
    for r in rows:
        assert r["zero"]["rel"] == pytest.approx(1.0)
        # same inputs, projection and sample words: the kernels equal the fixed reference up to rounding
        assert abs(r["fastnorm"]["rel"] - r["ref-fixed"]["rel"]) < 1e-4
        if r["family"] == "clustered":  # structured inputs: better than uniform attention
            assert r["fastnorm"]["rel"] < r["mean-v"]["rel"]
    assert rc == 0


def test_lm_example_smoke(capsys):
    lm = _load("examples/hyper_attention_lm.py")
    assert lm.main(["--config", "smoke", "--device", "cpu", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    for name in ("exact", "hyper-all", "hyper-half"):
        assert f"| {name} |" in text
