"""The degradation experiment end to end on a tiny dataset (real training, real plots)."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.workstation import experiment
from tests.conftest import make_config


def test_experiment_trains_four_nets_states_the_outcome_and_measures_residuals(tmp_path: Path, shapes_root: Path) -> None:
    cfg = make_config(tmp_path, "degradation", data__path=str(shapes_root), run__name="deg",
                      train__epochs=2, train__batch_size=12, model__width=4,
                      preprocess__input_size=16, preprocess__resize=16, train__cache_size=16)
    record = json.loads(experiment.run(cfg).read_text())
    assert set(record["curves"]) == {"plain20", "plain56", "resnet20", "resnet56"}
    assert all(len(c["train_error"]) == 2 and len(c["val_error"]) == 2 for c in record["curves"].values())
    outcome = record["outcome"]
    final = outcome["final_train_error"]
    assert outcome["plain_deeper_is_worse"] == (final["plain56"] > final["plain20"])
    assert outcome["residual_deeper_is_better"] == (final["resnet56"] < final["resnet20"])
    assert len(record["residual_norms"]) == 27 and all(v >= 0 for v in record["residual_norms"])
    for name in ("degradation.png", "residual_norms.png"):
        assert (cfg.run_dir / name).stat().st_size > 10000
