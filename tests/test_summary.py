import pytest
import torch
from torch import nn

import torchhouse as th
from torchhouse.frontends.demo import digits_cnn


def test_summary_shapes_and_totals():
    net = digits_cnn()
    s = th.summary(net, input_size=(1, 1, 8, 8))
    expected = sum(p.numel() for p in net.parameters())
    assert s.total_params == expected and s.trainable_params == expected and s.non_trainable_params == 0
    shapes = {row.name: row.output_shape for row in s.rows}
    assert shapes["0"] == [[1, 32, 8, 8]]
    assert shapes["4"] == [[1, 64, 4, 4]]
    assert shapes["9"] == [[1, 10]]
    text = str(s)
    assert "Conv2d" in text and f"Total params: {expected:,}" in text
    assert s.param_bytes == expected * 4


def test_summary_counts_shared_parameters_once_and_frozen_ones_as_non_trainable():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 8)
            self.out = nn.Linear(8, 100, bias=False)
            self.out.weight = self.emb.weight
            self.norm = nn.LayerNorm(8)
            self.norm.requires_grad_(False)

        def forward(self, x):
            return self.out(self.norm(self.emb(x)))

    s = th.summary(Tied(), input_data=torch.zeros(2, 5, dtype=torch.long))
    assert s.total_params == 800 + 16
    assert s.non_trainable_params == 16
    assert s.trainable_params == 800


def test_summary_with_an_example_input_tuple_and_model_method():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)

        def forward(self, x, z):
            return self.a(x) + z

    s = th.summary(Two(), input_data=(torch.zeros(4, 3), torch.zeros(4, 2)))
    assert s.rows[0].output_shape == [[4, 2]]
    model = th.Model(nn.Linear(3, 2), device="cpu")
    assert model.summary(input_size=(1, 3)).total_params == 8


def test_summary_leaves_training_mode_alone():
    net = digits_cnn()
    net.train()
    th.summary(net, input_size=(2, 1, 8, 8))
    assert net.training


def test_summary_takes_input_shape_without_the_batch_dimension_and_a_model():
    import torchhouse as th

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert th.summary(net, input_shape=(1, 8, 8)).total_params == 650
    assert th.summary(th.Model(net, device="cpu"), input_shape=(1, 8, 8)).total_params == 650
    with pytest.raises(th.DataError, match="input_size includes the batch dimension"):
        th.summary(nn.Linear(64, 10), input_size=(64, 3))
    with pytest.raises(th.ConfigError, match="exactly one of input_size, input_shape or input_data"):
        th.summary(net)


def test_the_net_s_own_error_keeps_its_type_and_message_and_gets_no_batch_hint():
    import torchhouse as th

    class Picky(nn.Module):
        def forward(self, x):
            return {"a": x}["b"]  # a KeyError of the net's own

    with pytest.raises(KeyError, match="'b'") as caught:
        th.summary(Picky(), input_size=(2, 3))
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "batch dimension" not in notes
    import sys

    if sys.version_info >= (3, 11):  # exceptions take notes from 3.11 on
        assert "summary: the net failed on an input of" in notes


def test_an_embedding_given_float_zeros_names_dtype_long_and_works_with_it():
    import torch

    import torchhouse as th

    net = nn.Sequential(nn.Embedding(50, 4), nn.Flatten(), nn.Linear(4 * 16, 2))
    with pytest.raises(th.DataError, match=r"torch.float32 zeros.*dtype=torch.long"):
        th.summary(net, input_size=(1, 16))
    assert th.summary(net, input_size=(1, 16), dtype=torch.long).total_params == 50 * 4 + 64 * 2 + 2
