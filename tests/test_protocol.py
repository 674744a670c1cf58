"""The comparison protocol's arithmetic: grids, matched-reward crossings, and the selection rule."""

import math

import pandas as pd
import pytest

from nabla.data.toy2d import LinearReward, QuadraticReward, circle_mixture, expected_reward, tilt
from nabla.protocol import (at_matched_reward, divergence_bound_at_level, first_crossing, grid_points, grid_size, level,
                            majority_reach, select, value_at)


def test_grid_points_are_the_product_in_key_order_with_the_last_fastest():
    grid = {"lr": [1, 2], "output_reg": [0, 10, 100]}
    points = grid_points(grid)
    assert grid_size(grid) == len(points) == 6
    assert points[:4] == [{"lr": 1, "output_reg": 0}, {"lr": 1, "output_reg": 10}, {"lr": 1, "output_reg": 100},
                          {"lr": 2, "output_reg": 0}]


def test_a_crossing_is_interpolated_between_the_evaluations_around_it():
    rounds, rewards = [0, 10, 20, 30], [0.0, 1.0, 3.0, 2.0]
    assert first_crossing(rounds, rewards, 2.0) == pytest.approx(15.0)
    assert first_crossing(rounds, rewards, 0.0) == 0.0  # the prior is already there
    assert first_crossing(rounds, rewards, 3.5) is None
    assert first_crossing([0, 10, 20], [0.0, float("nan"), 5.0], 1.0) is None  # a diverged evaluation ends it
    assert value_at(rounds, [1.0, 3.0, 5.0, 0.0], 15.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="outside"):
        value_at(rounds, rewards, 31)


def test_metrics_at_matched_reward_are_read_on_the_evaluation_split_at_the_validation_crossing():
    curves = pd.DataFrame({
        "round": [0, 10, 0, 10], "trajectories": [0, 100, 0, 100], "seconds": [0, 4, 0, 4],
        "split": ["validation", "validation", "evaluation", "evaluation"],
        "reward_mean": [0.0, 1.0, 0.1, 0.9], "energy_distance_target": [1.0, 0.8, 2.0, 1.0],
    })
    row = at_matched_reward(curves, 0.25, ["energy_distance_target"])
    assert row["reached"] and row["round"] == pytest.approx(2.5) and row["trajectories"] == pytest.approx(25.0)
    assert row["energy_distance_target"] == pytest.approx(1.75)  # evaluation: 2.0 → 1.0, a quarter of the way
    assert row["reward_mean"] == pytest.approx(0.3)
    assert at_matched_reward(curves, 1.5, ["energy_distance_target"]) == {"reached": False, "max_reward": 1.0}
    # a run that only lost reward: its best is its best after the prior (which every run shares)
    worse = curves.assign(reward_mean=[0.0, -0.5, 0.1, -0.4])
    assert at_matched_reward(worse, 0.25, [])["max_reward"] == -0.5


def test_the_selection_reads_the_larger_divergence_of_the_two_evaluations_around_the_crossing():
    def run(rewards, values, column="fid_to_prior"):
        return pd.DataFrame({"round": [0, 5, 10, 15], "split": "validation", "reward_mean": rewards, column: values})

    # a run that jumps far past the level 0.2 in its first 5 rounds (ReFL's λ = 100 at tiny): its
    # crossing interpolates to round 0.5 and FID 10, but the only evaluation past the prior showed 100
    jump = run([0.1, 1.1, 1.2, 1.3], [0.0, 100.0, 110.0, 120.0])
    assert at_matched_reward(jump, 0.2, ["fid_to_prior"])["fid_to_prior"] == pytest.approx(10.0)
    assert divergence_bound_at_level(jump, 0.2, "fid_to_prior") == 100.0
    # a run that climbs to it between rounds 5 (0.15) and 10 (0.25): the larger of 8 and 20
    climb = run([0.1, 0.15, 0.25, 0.3], [0.0, 8.0, 20.0, 30.0])
    assert divergence_bound_at_level(climb, 0.2, "fid_to_prior") == 20.0
    # a crossing on an evaluation, or at the prior, is read there alone
    assert divergence_bound_at_level(climb, 0.25, "fid_to_prior") == 20.0
    assert divergence_bound_at_level(climb, 0.1, "fid_to_prior") == 0.0
    assert math.isnan(divergence_bound_at_level(climb, 0.31, "fid_to_prior"))
    # a divergence that falls as the reward rises (the distance to the target at toy2d): the one before
    towards = run([0.1, 0.15, 0.25, 0.3], [2.0, 1.5, 0.5, 0.4], "energy_distance_target")
    assert divergence_bound_at_level(towards, 0.2, "energy_distance_target") == 1.5
    # a diverged evaluation ends the curve, as it ends the crossing
    assert math.isnan(divergence_bound_at_level(run([0.1, math.nan, 0.3, 0.3], [0.0] * 4), 0.2, "fid_to_prior"))
    # only the validation split counts
    mixed = pd.concat([climb, climb.assign(split="evaluation", reward_mean=[0.1, 0.5, 0.5, 0.5])])
    assert divergence_bound_at_level(mixed, 0.2, "fid_to_prior") == 20.0
    # and so the climb, not the jump, is selected
    def point(name, curve):
        return {"point": name, "settings": {"lr": int(name[1])}, "reached": True, "fraction": 1.0,
                "fid_to_prior": divergence_bound_at_level(curve, 0.2, "fid_to_prior"),
                "interpolated": at_matched_reward(curve, 0.2, ["fid_to_prior"])["fid_to_prior"]}

    assert select([point("p0", climb), point("p1", jump)], "fid_to_prior")["point"] == "p0"
    # equal bounds (both pass 0.2 before their first evaluation): the interpolation decides
    steep = run([0.1, 0.4, 0.5, 0.6], [0.0, 100.0, 110.0, 120.0])  # at round 5/3, FID 100/3
    assert select([point("p0", steep), point("p1", jump)], "fid_to_prior")["point"] == "p1"
    assert select([point("p0", jump), point("p1", steep)], "fid_to_prior")["point"] == "p0"


def test_levels_are_fractions_of_the_way_from_the_prior_to_the_reference():
    assert level(0.33, 2.87, 0.5) == pytest.approx(1.6)
    assert level(-2.0, -1.0, 0.75) == pytest.approx(-1.25)


def test_the_reference_is_the_highest_reward_a_strict_majority_of_methods_reach():
    reaches = {"a": 0.9, "b": 0.2, "c": 0.5, "d": 0.7, "e": 0.3, "f": 0.4, "g": 0.6}
    assert majority_reach(reaches) == 0.5  # 4 of 7 (a, d, g, c) reach it, a 5th (f) does not
    assert sum(v >= majority_reach(reaches) for v in reaches.values()) == 4
    # no minority moves it: the three best may run off to anything
    assert majority_reach({**reaches, "a": 1e9, "d": math.inf, "g": 0.51}) == 0.5
    assert majority_reach({"a": 2.0, "b": -1.0}) == -1.0  # of two, both must reach it
    assert majority_reach({"a": 1.0, "b": 4.0, "c": 3.0, "d": 2.0}) == 2.0  # 3 of 4
    assert majority_reach({"a": 7.0}) == 7.0
    with pytest.raises(ValueError, match="no NaN"):
        majority_reach({"a": 1.0, "b": math.nan})
    with pytest.raises(ValueError):
        majority_reach({})


def test_expected_rewards_are_exact():
    prior = circle_mixture()
    torch = pytest.importorskip("torch")
    x, _ = prior.sample(400_000, torch.Generator().manual_seed(0))
    for reward in (LinearReward([1.0, 0.0]), QuadraticReward([0.0, 2.0])):
        for mixture in (prior, tilt(prior, reward, 0.5)):
            samples = x if mixture is prior else mixture.sample(400_000, torch.Generator().manual_seed(1))[0]
            assert expected_reward(mixture, reward) == pytest.approx(reward(samples).mean().item(), abs=0.02)


def points(values, reached=(True, True, True, True), fractions=(0.6, 0.7, 0.8, 0.9)):
    grid = grid_points({"lr": [1, 2], "output_reg": [0, 10]})
    return [{"point": f"p{k}", "settings": s, "reached": r, "energy_distance_target": v, "interpolated": v,
             "fraction": f}
            for k, (s, v, r, f) in enumerate(zip(grid, values, reached, fractions))]


def test_the_rule_takes_the_lowest_divergence_among_points_that_reach_the_level():
    chosen = select(points([0.5, 0.2, 0.1, 0.3], reached=(True, True, False, True)), "energy_distance_target")
    assert chosen["point"] == "p1" and chosen["rule"].startswith("lowest")
    assert chosen["edges"] == {"lr": "low edge of 2 values", "output_reg": "high edge of 2 values"}


def test_without_a_point_at_the_level_the_rule_takes_the_one_closest_to_it():
    nan = math.nan
    chosen = select(points([nan] * 4, reached=(False,) * 4, fractions=(0.1, 0.4, 0.3, 0.2)), "energy_distance_target")
    assert chosen["point"] == "p1" and "no point reached" in chosen["rule"]


def test_edges_tell_interior_optima_from_those_at_the_grid_edge():
    grid = [{"point": f"p{k}", "settings": {"lr": lr}, "reached": True, "d": d, "interpolated": d, "fraction": 1.0}
            for k, (lr, d) in enumerate(zip([1, 2, 4, 8], [0.4, 0.1, 0.2, 0.3]))]
    assert select(grid, "d")["edges"] == {"lr": "interior"}
    grid[0]["d"] = 0.0
    assert select(grid, "d")["edges"] == {"lr": "low edge"}


def test_plateau_is_flat_within_a_tenth_of_the_change_or_of_the_spread():
    from nabla.protocol import plateaued

    rounds = [0, 5, 10, 15, 20, 25, 30]
    rising = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2]  # still rising: its last half adds 0.6 of 1.2
    flat = [0.0, 0.6, 0.9, 1.0, 1.0, 1.01, 1.0]  # its last half adds ~0
    assert not plateaued(rounds, rising, spread=0.5)
    assert plateaued(rounds, flat, spread=0.5)
    # the same rise counts as flat when samples' rewards spread over much more than it
    assert plateaued(rounds, rising, spread=10.0)
    # a curve that never moved is flat; a small steady drift of a still run is not, at a small spread
    still = [0.146, 0.143, 0.144, 0.143, 0.144, 0.144, 0.143]
    assert plateaued(rounds, still, spread=0.05)
    assert not plateaued(rounds, [0.10, 0.10, 0.11, 0.12, 0.13, 0.14, 0.15], spread=0.05)
    # a collapse that has levelled off is flat; one still falling is not
    assert plateaued(rounds, [1.0, 0.2, 0.0, 0.0, 0.01, 0.0, 0.0], spread=0.1)
    assert not plateaued(rounds, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], spread=0.1)
    with pytest.raises(ValueError, match="at least 3"):
        plateaued([0, 5], [0.0, 1.0], 0.1)
