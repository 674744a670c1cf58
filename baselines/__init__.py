"""The methods ∇-GFlowNet is compared with, each a registered :class:`nabla.methods.Method`.

* ``ddpo`` (:mod:`baselines.ddpo`) — DDPO, PPO on the denoising MDP with per-prompt advantage
  normalisation. Black, Janner, Du, Kostrikov, Levine, "Training Diffusion Models with
  Reinforcement Learning", ICLR 2024; defaults from its release (kvablack/ddpo-pytorch).
* ``draft`` and ``draft_lv`` (:mod:`baselines.draft`) — DRaFT-K and DRaFT-LV, backpropagation
  of the reward through the last sampling steps. Clark, Vicol, Swersky, Fleet, "Directly
  Fine-Tuning Diffusion Models on Differentiable Rewards", ICLR 2024.
* ``refl`` (:mod:`baselines.refl`) — ReFL, the reward of the one-step x̂_0 prediction at a random
  late step. Xu et al., "ImageReward: Learning and Evaluating Human Preferences for
  Text-to-Image Generation", NeurIPS 2023; stop-step range from its release (THUDM/ImageReward).
* ``db_gflownet`` (:mod:`baselines.db_gflownet`) — detailed-balance GFlowNet with a forward-looking
  scalar log-flow. Zhang et al., "Improving GFlowNets for Text-to-Image Diffusion Alignment"
  (DAG-DB), 2024.

Beyond the paper, the methods whose optimum is also the tilted prior p#·exp(βr):

* ``adjoint_matching`` (:mod:`baselines.adjoint_matching`) — Domingo-Enrich, Drozdzal, Karrer,
  Chen, "Adjoint Matching: Fine-tuning Flow and Diffusion Generative Models with Memoryless
  Stochastic Optimal Control", ICLR 2025; defaults from microsoft/soc-fine-tuning-sd.
* ``rtb`` (:mod:`baselines.rtb`) — Relative Trajectory Balance. Venkatraman et al., "Amortizing
  intractable inference in diffusion models for vision, language, and control", NeurIPS 2024;
  defaults from GFNOrg/diffusion-finetuning.
* ``dpok`` and ``dpok_kl_return`` (:mod:`baselines.dpok`) — DPOK. Fan et al., "DPOK: Reinforcement
  Learning for Fine-tuning Text-to-Image Diffusion Models", NeurIPS 2023; defaults from
  google-research ``dpok/``; the second puts the KL into the return, which makes its optimum exact.

The modules are listed in ``nabla.methods.METHOD_MODULES``; importing one registers its methods.
"""
