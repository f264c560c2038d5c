"""The training step under DistributedDataParallel: the BD3LM forward must run inside the DDP wrapper's
forward, or DDP never all-reduces the gradients and every rank trains its own student.

Two CPU processes (gloo) run one step on different batches of the same tiny student; after backward every
rank must hold the same gradient, the mean of the two single-process gradients. The ranks are launched the
way users launch training (``torch.distributed.run``, which ``accelerate launch`` wraps), running this file
as the worker script, so a worker that fails shows its own traceback in the test's failure message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
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
    """One rank, started by torch.distributed.run: a DDP step, then its gradient to ``output/rank{r}.pt``.

    The rank leaves with ``os._exit`` once its gradient is saved: DDP's backward has finished the all-reduce
    by then, and the process-group teardown is where a rank was seen to hang on a loaded sandbox."""
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    (output / f"rank{rank}.pid").write_text(str(os.getpid()))
    ddp = torch.nn.parallel.DistributedDataParallel(BD3LMStudent(_student()))
    _step()(ddp, _batch(rank)).loss.backward()
    torch.save(_grad(ddp.module), output / f"rank{rank}.tmp")
    os.replace(output / f"rank{rank}.tmp", output / f"rank{rank}.pt")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _stop(launcher: subprocess.Popen, output: Path) -> None:
    """Kill the launcher's group and every rank that wrote its pid (the ranks may sit in their own groups)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(launcher.pid, signal.SIGKILL)
    for pid_file in output.glob("rank*.pid"):
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    launcher.wait()


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
    log = tmp_path / "launcher.log"  # a file, not a pipe: a lingering rank cannot keep the test waiting for EOF
    with log.open("w") as sink:
        launcher = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    results = [tmp_path / f"rank{rank}.pt" for rank in range(2)]
    deadline = time.monotonic() + DDP_WAIT_S
    while launcher.poll() is None and not all(r.exists() for r in results) and time.monotonic() < deadline:
        time.sleep(0.2)
    finished = all(r.exists() for r in results)
    if launcher.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            launcher.wait(timeout=30 if finished else 0.1)
    code = launcher.poll()
    _stop(launcher, tmp_path)
    text = log.read_text()[-4000:]
    assert finished, f"the two ranks did not both save their gradient within {DDP_WAIT_S} s:\n{text}"
    assert code in (0, None), text
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
