"""Per-sample records gathered from 2 gloo CPU processes equal the records of one process, field by field, also
when the ranks recorded different fields for a key (a cascade component that found no sample standing on one
rank records only ``correct`` there)."""
from __future__ import annotations

import datetime
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evaluation.robustness.records import RecordKey, Records
from utils.distributed import DistInfo

KEY = RecordKey("autoattack", "A@v0,a0.1", "default", "apgd-t")
SANITY = RecordKey("pgd", "A@v0,a0.1", "default")
# sample index -> (label, clean correct, the component's correct, its loss or None where not attacked)
SAMPLES = {0: (1, False, 0, None), 1: (2, True, -1, None), 2: (0, True, 1, 0.5), 3: (1, True, 0, 2.5),
           4: (3, True, 1, 0.25)}
RANK_SAMPLES = ([1, 0], [2, 3, 4])  # rank 0: nothing standing for the component (only `correct` recorded)


def fill(records: Records, indices: list[int]) -> None:
    """The records one rank (or the single process, with every index) makes for ``indices``."""
    labels = torch.tensor([SAMPLES[i][0] for i in indices])
    records.add_samples([f"c/{i}" for i in indices], torch.tensor(indices), labels,
                        torch.tensor([SAMPLES[i][1] for i in indices]))
    values = {"correct": torch.tensor([SAMPLES[i][2] for i in indices], dtype=torch.int8)}
    losses = [SAMPLES[i][3] for i in indices]
    if any(v is not None for v in losses):
        values["loss"] = torch.tensor([math.nan if v is None else v for v in losses], dtype=torch.float64)
    records.add(KEY, values, len(indices))
    records.add(SANITY, {"correct": torch.tensor([1] * len(indices))}, len(indices))
    records.add_extra("clean_loss", torch.tensor([float(i) for i in indices]))


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))  # mismatched collectives fail, not hang
    try:
        records = Records()
        fill(records, RANK_SAMPLES[rank])
        records.gather(DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu")))
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(
            (records.ids, records.index, records.clean_correct, records.columns, records.extra)))
    finally:
        dist.destroy_process_group()


def test_two_processes_with_different_fields_per_rank_gather_to_the_single_process_records(tmp_path: Path) -> None:
    mp.start_processes(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    single = Records()
    fill(single, [0, 1, 2, 3, 4])
    single.gather(DistInfo())
    for rank in (0, 1):
        ids, index, clean, columns, extra = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        assert ids == single.ids and index == single.index == [0, 1, 2, 3, 4] and clean == single.clean_correct
        assert columns.keys() == single.columns.keys() and extra.keys() == single.extra.keys()
        for key, fields in single.columns.items():
            assert fields.keys() == columns[key].keys()
            for name, values in fields.items():
                np.testing.assert_array_equal(np.asarray(columns[key][name], dtype=float),
                                              np.asarray(values, dtype=float), err_msg=f"{key.name} {name}")
        np.testing.assert_array_equal(extra["clean_loss"], single.extra["clean_loss"])
    assert np.isnan(single.column(KEY, "loss")[:2]).all() and single.column(KEY, "loss")[3] == 2.5


def test_a_column_shorter_than_its_rank_s_samples_is_an_error_naming_it() -> None:
    records = Records()
    records.add_samples(["a", "b"], torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([True, True]))
    records.columns[KEY] = {"correct": [1]}
    with pytest.raises(RuntimeError, match=r"rank 1: autoattack/apgd-t\|A@v0,a0.1\|default field 'correct' has 1"):
        records._merge([Records()._payload(), records._payload()])
