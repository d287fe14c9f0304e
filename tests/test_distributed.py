"""Two CPU processes with accelerate: identical weights after updates, checkpoint save/resume without a hang.

Launches two CPU processes with ``python -m torch.distributed.run --nproc_per_node 2`` (the
Python equivalent of ``accelerate launch``: on one machine without MPI, ``accelerate launch --cpu
--num_processes 2`` starts a single process — accelerate 1.15 only launches multi-CPU jobs
through ``mpirun``) on a small script (written to a temp folder); ``Accelerator(cpu=True)``
picks up the process group (gloo). The script trains a tiny random pipeline for one epoch,
saves a checkpoint (main process writes, both wait), loads it back on both ranks, trains one
more epoch, and writes a digest of its weights. The test checks both ranks agree, that training changed the weights, and that the
launch ends within a timeout (a hang at checkpoint time would fail it).
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys, hashlib
    import torch
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from pxpo_lite.models import build_tiny_pipeline
    from pxpo_lite.trainer import Trainer, TrainConfig

    out, use_lora = sys.argv[1], sys.argv[2] == "lora"
    acc = Accelerator(cpu=True)
    pipe = build_tiny_pipeline(0)
    # build_tiny_pipeline trains its tokenizer afresh (not bit-reproducible across processes): share rank 0's
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        vocab = broadcast_object_list([pipe.tokenizer])[0]
        pipe.tokenizer = vocab
    cfg = TrainConfig(num_steps=3, samples_per_epoch=4, sample_batch_size=2, train_batch_size=1, grad_accum_steps=2,
                      use_lora=use_lora, clip_range=0.1, progress=False, learning_rate=1e-3)
    prompts = ["a bald portrait with a red shirt on a blue background",
               "a portrait with long blue hair and a white shirt on a grey background"]
    tr = Trainer(pipe, "blue", cfg, prompts=prompts, accelerator=acc)
    w0 = {k: v.clone() for k, v in tr.model_state_dict().items()}
    tr.train(1)
    tr.save_checkpoint(out + "/ck")
    tr.load_checkpoint(out + "/ck")
    tr.train(1)
    w = tr.model_state_dict()
    digest = hashlib.sha256(b"".join(w[k].numpy().tobytes() for k in sorted(w))).hexdigest()
    changed = any(not torch.equal(w0[k], w[k]) for k in w)
    json.dump({"rank": acc.process_index, "world": acc.num_processes, "digest": digest, "changed": changed,
               "epochs": tr.epoch, "rewards": [m["reward_mean"] for m in tr.metrics]},
              open(f"{out}/rank{acc.process_index}.json", "w"))
    acc.wait_for_everyone()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_cpu_processes_stay_in_sync(tmp_path, mode):
    script = tmp_path / "train_dist.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(port), str(script), str(tmp_path), mode,
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the 2-process run did not finish in 300 s (a hang?):\n{(e.stderr or '')[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"], "ranks hold different weights after the updates"
    assert ranks[0]["changed"] and ranks[0]["epochs"] == 2
    assert ranks[0]["rewards"] == ranks[1]["rewards"]  # gathered rewards: both ranks log the same numbers
    assert (tmp_path / "ck" / "state.json").exists() and not (tmp_path / "ck.tmp").exists()
