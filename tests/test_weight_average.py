"""The scoring network's weight average: the first epoch's weights, then d * avg + (1 - d) * new."""

import torch

from boxsup.trainers.weight_average import WeightAverage


def test_average_starts_at_the_first_weights_then_moves_by_one_minus_decay():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    average = WeightAverage(model, decay=0.75)
    with torch.no_grad():
        model[0].weight.fill_(4.0)
        model[1].num_batches_tracked.fill_(3)
    average.update(model)
    assert torch.equal(average.model[0].weight, torch.full((1, 2), 4.0))
    with torch.no_grad():
        model[0].weight.fill_(8.0)
        model[1].num_batches_tracked.fill_(5)
    average.update(model)
    assert torch.allclose(average.model[0].weight, torch.full((1, 2), 5.0))  # 0.75 * 4 + 0.25 * 8
    assert int(average.model[1].num_batches_tracked) == 5  # integer buffers are copied

    restored = WeightAverage(model, decay=0.75)
    restored.load_state_dict(average.state_dict())  # what a checkpoint holds
    assert restored.started and torch.equal(restored.model[0].weight, average.model[0].weight)
