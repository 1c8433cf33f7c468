"""The toy world's oracle as a reward model: the upper bound of what any reward could tell Stream-R1.

Stream-R1's weights are only as good as the reward's ranking of the student's rollouts. On the toy world that ranking
can be made perfect: :class:`OracleReward` returns the oracle's own VQ / MQ / TA scores
(:func:`streamr1.toy.oracle.oracle_scores`, computed from the pixels and the caption). Plugged into the
:class:`~streamr1.rewards.service.RewardService` in place of the trained toy reward, it separates the two questions
the quality table mixes: does reliability weighting help when the reward is right, and is the toy reward right.

The oracle is not a smooth function of the pixels (medians, a tracked centroid), so it serves reliability weighting
(``W_inter``, no gradient) only; the stack ``callbacks/oracle_reliability.yaml`` therefore has no
``SaliencyWeighting``. Evaluating with the same oracle that weighted the training is the point here (an upper
bound), not a fair comparison: read its row in ``results/quality.md`` that way.

Example::

    - class_path: streamr1.rewards.service.RewardService
      init_args:
        model: {class_path: streamr1.toy.oracle_reward.OracleReward}
        normalization: pkg://streamr1/assets/toy_oracle_stats.json
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from streamr1.protocols import AXES


class OracleReward(nn.Module):
    """``{"VQ", "MQ", "TA"}`` oracle scores ``[B]`` of toy-world videos ``[B, T, 3, H, W]`` in ``[0, 1]``.

    Prompts must be toy captions (``"a red circle moving left"``): TA compares the video with the caption's colour and
    direction. No parameters, no gradient (see the module docstring).
    """

    axes: tuple[str, ...] = AXES

    def forward(self, video: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
        from streamr1.toy.oracle import oracle_scores

        scores = oracle_scores(video.detach().float() * 2 - 1, list(prompts))
        return {a: scores[a].to(video.dtype) for a in self.axes}
