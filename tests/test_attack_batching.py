"""An evaluation gives every sample the same records whatever the batch size: the engine passes the samples'
dataset indices to the attacks, whose random draws (random starts, restarts, Square's search, the sanity PGD,
the cascade's random starts) are seeded per sample."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.robustness.records import load_records
from tests.test_evaluation import AudioLinear, run, toy_loader


@pytest.mark.parametrize("attacks,options", [
    (["pgd"], {"random_start": True, "restarts": 2, "attack_steps": 3}),
    (["square"], {"square_queries": 40}),
    (["aa-fast"], {"apgd_steps": 4, "apgd_targets": 2, "square_queries": 30}),
])
def test_per_sample_records_do_not_depend_on_the_batch_size(tmp_path: Path, attacks: list[str], options) -> None:
    model = AudioLinear()
    records = {}
    for batch in (8, 3):
        out = tmp_path / f"batch{batch}"
        out.mkdir()
        run(model, out, loader=toy_loader(model, batch=batch), attack_type=attacks, epsilons=[(0.0, 0.012)],
            sanity_eps=0.3, **options)
        records[batch] = load_records(out / "per_sample.npz")
    eight, three = records[8], records[3]
    assert eight.ids == three.ids and eight.keys() == three.keys()
    fooled_some = False
    for key in eight.keys():
        # a field no batch recorded (a cascade component with no sample left) is NaN for every sample
        for field in set(eight.columns[key]) | set(three.columns[key]):
            a, b = (np.asarray(r.columns[key].get(field, [np.nan] * r.num_samples), dtype=float)
                    for r in (eight, three))
            assert np.array_equal(a, b, equal_nan=True), (key, field)
        fooled_some |= bool((eight.column(key) == 0).any())
    assert fooled_some  # the attacks did something, so the draws mattered
