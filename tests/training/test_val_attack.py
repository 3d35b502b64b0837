"""--val-attack: the per-epoch check with another attack than PGD, e.g. the fast AutoAttack mode."""

from __future__ import annotations

import json

from cwr_fast import train as train_cli

from helpers.train import TINY


def test_the_per_epoch_check_runs_the_given_attack(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(TINY + ["--epochs", "1", "--out", str(out), "--val-attack", "aa:version=malt:seed=0"]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["val"]["attack"] == "aa:version=malt:seed=0"
    assert "aa:version=malt:seed=0" in capsys.readouterr().out


def test_a_bad_val_attack_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(TINY + ["--out", str(out), "--val-attack", "malt:candidates=0"]) == 2
    err = capsys.readouterr().err
    assert "--val-attack" in err and "candidates" in err and not out.exists()
