"""Mixed precision, gradient accumulation, clipping and compile on CPU."""

import pytest
import torch
from torch import nn

import torchhouse as th
from conftest import make_classification, make_net


def test_accumulating_n_batches_equals_one_batch_of_n_times_b():
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    big = th.Model(
        nn.Linear(6, 1), loss=nn.MSELoss(), device="cpu", optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    small = th.Model(
        nn.Linear(6, 1),
        loss=nn.MSELoss(),
        device="cpu",
        accumulate_grad_batches=4,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    small.net.load_state_dict(big.net.state_dict())
    big.fit(x, y, epochs=2, batch_size=32, shuffle=False, progress="none")
    small.fit(x, y, epochs=2, batch_size=8, shuffle=False, progress="none")
    for a, b in zip(big.net.parameters(), small.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_steps_the_optimizer_every_n_batches():
    x, y = make_classification(n=40)
    steps = []

    class Counting(th.Model):
        def optimizer_step(self):
            stepped = super().optimizer_step()
            steps.append(stepped)
            return stepped

    Counting(make_net(), loss=nn.CrossEntropyLoss(), device="cpu", accumulate_grad_batches=3).fit(
        x, y, epochs=1, batch_size=8, progress="none"
    )  # 5 batches: steps after 3 and after the last
    assert steps == [False, False, True, False, True]


def test_gradient_clipping_by_norm_and_value():
    x, y = make_classification(n=16)
    for algorithm, value in (("norm", 1e-3), ("value", 1e-4)):
        seen = []

        class Spy(th.Model):
            def clip_gradients(self):
                super().clip_gradients()
                grads = [p.grad for p in self.net.parameters()]
                if algorithm == "norm":
                    seen.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
                else:
                    seen.append(max(g.abs().max().item() for g in grads))

        Spy(
            make_net(),
            loss=nn.CrossEntropyLoss(),
            device="cpu",
            gradient_clip_val=value,
            gradient_clip_algorithm=algorithm,
        ).fit(x, y, epochs=1, batch_size=16, progress="none")
        assert seen and seen[0] <= value * 1.0001


def test_no_hidden_clipping_by_default():
    """A huge gradient reaches the optimizer as it is (torchkeras clips to 1.0 silently)."""
    x, y = make_classification(n=16)
    net = make_net()
    seen = []

    class Spy(th.Model):
        def optimizer_step(self):
            seen.append(float(torch.cat([p.grad.reshape(-1) for p in self.net.parameters()]).norm()))
            return super().optimizer_step()

    Spy(net, loss=lambda preds, target: 1e4 * nn.functional.cross_entropy(preds, target), device="cpu").fit(
        x, y, epochs=1, batch_size=16, progress="none"
    )
    assert seen and seen[0] > 100.0


def test_bf16_mixed_precision_trains_on_cpu():
    x, y = make_classification(n=200)
    model = th.Model(
        make_net(),
        loss=nn.CrossEntropyLoss(),
        device="cpu",
        precision="bf16-mixed",
        metrics={"acc": th.metrics.accuracy},
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    captured = {}

    class Peek(th.callbacks.Callback):
        def on_train_batch_end(self, batch, logs):
            captured["dtype"] = logs["preds"].dtype

    history = model.fit(x, y, epochs=10, callbacks=[Peek()], progress="none")
    assert captured["dtype"] == torch.bfloat16
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert next(model.net.parameters()).dtype == torch.float32


def test_fp16_mixed_precision_uses_a_grad_scaler():
    model = th.Model(make_net(), loss=nn.CrossEntropyLoss(), device="cpu", precision="16-mixed")
    assert isinstance(model.scaler, torch.amp.GradScaler)
    assert th.Model(make_net(), device="cpu", precision="bf16-mixed").scaler is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast training needs a CUDA GPU")
def test_fp16_mixed_precision_trains_on_gpu():
    x, y = make_classification(n=200)
    model = th.Model(
        make_net(),
        loss=nn.CrossEntropyLoss(),
        device="cuda",
        precision="16-mixed",
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    history = model.fit(x, y, epochs=5, progress="none")
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_compile_gives_the_same_training_as_eager():
    x, y = make_classification(n=64)
    eager = th.Model(
        make_net(seed=1),
        loss=nn.CrossEntropyLoss(),
        device="cpu",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    compiled = th.Model(
        make_net(seed=1),
        loss=nn.CrossEntropyLoss(),
        device="cpu",
        compile=True,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    eager.fit(x, y, epochs=2, batch_size=32, shuffle=False, progress="none")
    compiled.fit(x, y, epochs=2, batch_size=32, shuffle=False, progress="none")
    for a, b in zip(eager.net.parameters(), compiled.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # weights are saved without the compile wrapper's prefix
    assert list(compiled.net.state_dict()) == list(eager.net.state_dict())
