"""Moving the cut between rounds carries every trained weight: the model is the same function."""

from __future__ import annotations

import time

import torch

from device_agent.trainer import DeviceTrainer
from edge_service.server_session import ServerSession
from schemas import ModelInfo, RoundStart, TrainConfig, decode_frame
from splitnn.datasets import load_dataset
from splitnn.models import ModelSpec, build_model, cut_shapes
from splitnn.partition import merge_states, split_state
from splitnn.tensors import arrays_to_state, state_to_arrays

SPEC = ModelSpec("vgg5", (3, 32, 32), 10)
TRAIN = TrainConfig(lr=0.05, momentum=0.9, batch_size=16, batches=3, batch_timeout_s=5)


def train_round(state: dict[str, torch.Tensor], cut: int, round_no: int) -> dict:
    """One round at ``cut`` the way the edge and a device run it; returns the merged full state."""
    data = load_dataset("synthetic", "train", synthetic_size=64)
    trainer = DeviceTrainer(data, seed=round_no)
    device_state, server_state = split_state(state, SPEC, cut)
    start = RoundStart(
        session="s",
        round=round_no,
        cut=cut,
        model=ModelInfo(name="vgg5", input_shape=(3, 32, 32), num_classes=10),
        train=TRAIN,
        deadline_s=60,
    )
    trainer.start_round(start, state_to_arrays(device_state))
    session = ServerSession(
        device_id="d",
        round_no=round_no,
        spec=SPEC,
        cut=cut,
        server_state=server_state,
        train=TRAIN,
        act_shape=tuple(cut_shapes(SPEC)[cut - 1]),
        torch_device=torch.device("cpu"),
        max_frame_bytes=1 << 26,
    )
    for seq in range(TRAIN.batches):
        act, labels = trainer.forward()
        reply = session.step(seq, act, labels, time.perf_counter())
        trainer.backward(decode_frame(reply).tensors["grad"])
    return merge_states(SPEC, arrays_to_state(trainer.state()), session.state())


def test_reassembled_model_is_bit_identical_across_a_change_of_cut():
    torch.manual_seed(0)
    model = build_model(SPEC)
    after_round_one = train_round(model.state_dict(), cut=2, round_no=1)

    # Round two starts at another cut: the parts are cut from the same full state...
    for cut in (1, 4, 6, 7):
        device_state, server_state = split_state(after_round_one, SPEC, cut)
        rebuilt = merge_states(SPEC, device_state, server_state)
        assert rebuilt.keys() == after_round_one.keys()
        for name, value in after_round_one.items():
            assert torch.equal(rebuilt[name], value), name

    # ...and the network computes exactly the same function before and after the move.
    x = torch.from_numpy(load_dataset("synthetic", "test", synthetic_size=8).x)
    reference = build_model(SPEC)
    reference.load_state_dict(after_round_one)
    reference.eval()
    moved = build_model(SPEC)
    moved.load_state_dict(merge_states(SPEC, *split_state(after_round_one, SPEC, 5)))
    moved.eval()
    assert torch.equal(reference(x), moved(x))

    # Training then goes on from the moved cut with every weight it had learnt.
    after_round_two = train_round(after_round_one, cut=5, round_no=2)
    assert any(not torch.equal(after_round_two[k], after_round_one[k]) for k in after_round_one)
