"""The training step under DistributedDataParallel: the BD3LM forward must run inside the DDP wrapper's
forward, or DDP never all-reduces the gradients and every rank trains its own student.

Two CPU processes (gloo) run one step on different batches of the same tiny student; after backward every
rank must hold the same gradient, the mean of the two single-process gradients. The ranks are launched the
way users launch training (``torch.distributed.run``, which ``accelerate launch`` wraps), running this file
as the worker script, so a worker that fails shows its own traceback in the test's failure message.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from stages.train.collate import Batch
from stages.train.step import StudentStep
from tide.models.a2d_qwen3 import A2DQwen3Config, A2DQwen3LMHeadModel
from tide.models.student import BD3LMStudent
from tide.objective import Objective

VOCAB, MASK_ID, BLOCK, SEQ_LEN = 48, 47, 8, 16

# two launched workers import torch and transformers first: minutes on a loaded 2-core machine
DDP_WAIT_S = 600


def _student() -> A2DQwen3LMHeadModel:
    config = A2DQwen3Config(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return A2DQwen3LMHeadModel(config).float()


def _batch(rank: int) -> Batch:
    gen = torch.Generator().manual_seed(100 + rank)
    input_ids = torch.randint(0, MASK_ID, (2, SEQ_LEN), generator=gen)
    masked = torch.rand(2, SEQ_LEN, generator=gen) < 0.5
    masked[:, 0] = True
    return Batch(input_ids=input_ids, maskable=torch.ones(2, SEQ_LEN, dtype=torch.bool), masked=masked,
                 t=torch.tensor([0.4, 0.7]))


def _step() -> StudentStep:
    return StudentStep(Objective(mode="ce"), block_size=BLOCK, mask_token_id=MASK_ID)


def _grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _worker(output: Path) -> None:
    """One rank, started by torch.distributed.run: a DDP step, then its gradient to ``output/rank{r}.pt``."""
    dist.init_process_group("gloo")
    try:
        torch.set_num_threads(1)
        rank = dist.get_rank()
        ddp = torch.nn.parallel.DistributedDataParallel(BD3LMStudent(_student()))
        _step()(ddp, _batch(rank)).loss.backward()
        torch.save(_grad(ddp.module), output / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_step_all_reduces_gradients(tmp_path: Path):
    expected = []
    for rank in range(2):
        model = _student()
        _step()(model, _batch(rank)).loss.backward()
        expected.append(_grad(model))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), __file__, str(tmp_path),
    ]
    # gloo binds to the address the host name resolves to unless told otherwise; on a sandboxed machine that
    # address may not accept local connections, so the ranks meet on the loopback interface
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        _, stderr = launcher.communicate(timeout=DDP_WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and both ranks: nothing left running
        _, stderr = launcher.communicate()
        pytest.fail(f"the two ranks did not finish within {DDP_WAIT_S} s:\n{stderr[-4000:]}")
    assert launcher.returncode == 0, stderr[-4000:]
    grads = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    mean = (expected[0] + expected[1]) / 2
    assert not torch.allclose(expected[0], expected[1])
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], mean, rtol=1e-5, atol=1e-6)


def test_wrapped_raw_student_is_refused():
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    with pytest.raises(ValueError, match="BD3LMStudent"):
        _step()(Wrapper(_student()), _batch(0))


def test_bd3lm_student_wrapper_matches_raw_model():
    raw = _step()(_student(), _batch(0))
    wrapped = _step()(BD3LMStudent(_student()), _batch(0))
    assert {k: float(v) for k, v in raw.terms.items()} == {k: float(v) for k, v in wrapped.terms.items()}


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
