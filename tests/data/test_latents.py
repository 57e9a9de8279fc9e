"""Training windows of ``LatentEpisodes.sample``, with and without the plan generator's plans."""

import numpy as np
import torch

from wmpo.data.latents import LatentEpisodes


def episodes(lengths=(30, 25), stride=2) -> LatentEpisodes:
    m = sum(lengths)
    latents = torch.arange(m, dtype=torch.float16)[:, None, None, None].expand(m, 1, 2, 2).clone()
    actions = torch.arange(m * stride * 4, dtype=torch.float32).view(m, stride * 4) / 1000
    starts = np.cumsum([0, *lengths[:-1]])
    for s in starts:
        actions[s] = 0  # frame 0 of an episode has no action
    return LatentEpisodes(latents, actions, starts, np.asarray(lengths), ["a-v3", "b-v3"])


def test_plan_windows_leave_plain_windows_unchanged():
    data = episodes()
    plain = data.sample(8, 6, torch.Generator().manual_seed(3))
    planned = data.sample(8, 6, torch.Generator().manual_seed(3), plan_frames=8)
    assert torch.equal(plain.latents, planned.latents) and torch.equal(plain.n_context, planned.n_context)
    assert plain.plan_actions is None and planned.plan_actions.shape == (8, 16, 4)
    assert not planned.has_action.any() and not planned.actions.any()  # the plan is the only action input


def test_plans_cover_the_generated_frames_and_hold_their_actions():
    data = episodes()
    b = data.sample(64, 6, torch.Generator().manual_seed(0), plan_frames=8)
    for i in range(64):
        frame = b.latents[i, :, 0, 0, 0].long()  # each latent holds its global row number
        e = 0 if b.tasks[i] == "a-v3" else 1
        s, n = int(data.starts[e]), int(data.lengths[e])
        local = frame - s
        idx = b.plan_index[i]
        gen = slice(int(b.n_context[i]), None)
        assert (idx[gen] >= 1).all() and (idx[gen] <= 8).all()  # generated frames lie inside the plan
        assert idx[0] == 0
        p = int(local[-1] - idx[-1])  # the plan's start frame
        # The plan's actions are the env actions leading into frames p+1 .. p+8 (zeros past the end).
        want = torch.zeros(8, 8)
        rows = np.arange(p + 1, min(p + 8, n - 1) + 1)
        want[: len(rows)] = data.actions[s + rows]
        assert torch.equal(b.plan_actions[i], want.reshape(16, 4))


def test_plans_from_their_own_generator_leave_the_next_windows_as_for_a_plain_model():
    data = episodes()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        plain = data.sample(4, 6, g1)
        planned = data.sample(4, 6, g2, plan_frames=8, plan_gen=torch.Generator().manual_seed(9))
        assert torch.equal(plain.latents, planned.latents) and torch.equal(plain.n_context, planned.n_context)


def test_windows_are_those_of_the_per_window_draws():
    """The vectorised gather draws what a per-window loop draws, in the same order: earlier
    runs' training and validation windows (and a resumed run's) stay the same."""
    data = episodes(lengths=(30, 25, 12))
    g, ref_g = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    b = data.sample(32, 6, g, np.array([0, 2]))
    picks = np.array([0, 2])[torch.randint(0, 2, (32,), generator=ref_g).numpy()]
    for i, e in enumerate(picks):
        s, n = int(data.starts[e]), int(data.lengths[e])
        j = int(torch.randint(0, n - 6 + 1, (1,), generator=ref_g))
        rows = [s, *range(s + j, s + j + 6)]
        assert b.latents[i, :, 0, 0, 0].tolist() == rows  # each latent holds its global row number
        assert b.has_action[i].tolist() == [False, *[j + k >= 1 for k in range(6)]]
        assert torch.equal(b.actions[i, 1:][b.has_action[i, 1:]], data.actions[rows[1:]][b.has_action[i, 1:]])
        assert not b.actions[i, 0].any()
    assert torch.equal(b.n_context, 1 + torch.randint(1, 6, (32,), generator=ref_g))
    assert torch.equal(g.get_state(), ref_g.get_state())
    assert torch.equal(b.positions, torch.arange(7).expand(32, -1))


def test_plan_windows_carry_whether_their_episode_succeeded():
    data = episodes()
    plain = data.sample(16, 6, torch.Generator().manual_seed(1), plan_frames=8)
    assert plain.succeeded is None  # unknown (a packed file of the older format)
    data.succeeded = np.array([True, False])
    b = data.sample(16, 6, torch.Generator().manual_seed(1), plan_frames=8)
    assert b.succeeded.tolist() == [t == "a-v3" for t in b.tasks]
    assert torch.equal(b.latents, plain.latents)  # the windows do not change


def test_packed_latents_keep_the_success_flags(tmp_path):
    data = episodes()
    data.succeeded = np.array([False, True])
    data.save_packed(tmp_path / "p.npz", {"autoencoder_sha256": "x", "frame_stride": 2})
    got, _ = LatentEpisodes.load_packed(tmp_path / "p.npz")
    assert got.succeeded.tolist() == [False, True]
    data.succeeded = None
    data.save_packed(tmp_path / "q.npz", {})
    assert LatentEpisodes.load_packed(tmp_path / "q.npz")[0].succeeded is None
