"""transfer.device_batches takes batches only when the loop asks: no read-ahead."""

import torch

from torchhouse.data.transfer import device_batches


def test_batches_are_taken_from_the_source_only_when_the_loop_asks():
    taken = []

    def source():
        for i in range(5):
            taken.append(i)
            # the draw a loader's __getitem__ would make: its order must not change
            yield {"x": torch.rand(2, 3), "ids": ["a", "b"]}, torch.full((2,), i)

    torch.manual_seed(0)
    expected = [torch.rand(2, 3) for _ in range(5)]
    torch.manual_seed(0)
    batches = device_batches(source(), torch.device("cpu"))
    assert taken == []  # nothing read before the loop starts
    for index, (inputs, target) in enumerate(batches):
        assert taken == list(range(index + 1))  # exactly the batches the loop has had
        assert torch.equal(inputs["x"], expected[index]) and inputs["ids"] == ["a", "b"]
        assert target.tolist() == [index, index]
        if index == 2:
            break  # as steps_per_epoch or a stop does: the source stays at batch 3
    assert taken == [0, 1, 2]
