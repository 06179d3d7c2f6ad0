"""A trained sizing agent in the model registry: weights and JSON only, so loading never unpickles.

    <registry>/ppo_sizer/<id>/policy.pt    the policy's state_dict (tensors only, read with weights_only=True)
    <registry>/ppo_sizer/<id>/agent.json   architecture, action bounds, observation normalisation
    <registry>/ppo_sizer/<id>/meta.json    what ml/registry.py records for every version: sha256 of the
                                           files, feature hash, training details

Ids look like the forecast models' (`ppo_sizer-<UTC time>-<checksum>`); ModelRegistry.get / verify find and
check them like any version, so a changed file or another feature set is refused before torch reads a byte.
`ppo_sizer:latest` names the newest version. `stable_baselines3.PPO.load` is never used: it unpickles.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces

from ml.registry import META_FILE, ModelRegistry, RegistryError, _write_synced
from ml.rl.env import multiplier
from ml.rl.observation import CLIP, OBS_DIM, AccountState, ObsNorm, build_observation

KIND = "ppo_sizer"
POLICY_FILE = "policy.pt"
AGENT_FILE = "agent.json"
ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


@dataclass
class SizerAgent:
    """A policy ready for inference: `suggest` maps one raw observation to a size multiplier."""

    policy: object  # stable_baselines3 ActorCriticPolicy
    norm: ObsNorm
    bounds: tuple[float, float]
    arch: dict
    id: str = ""

    def action(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action (the Gaussian's mean) for standardised observations (rows x OBS_DIM)."""
        with torch.no_grad():
            x = torch.as_tensor(np.atleast_2d(obs), dtype=torch.float32)
            return self.policy._predict(x, deterministic=True).numpy()

    def suggest(
        self, features: np.ndarray, confidence: float, direction: int, votes: dict, account: AccountState
    ) -> float:
        raw = build_observation(features, confidence, direction, votes, account)
        return multiplier(self.action(self.norm(raw))[0], *self.bounds)


def build_policy(arch: dict):
    from stable_baselines3.common.policies import ActorCriticPolicy

    obs_space = spaces.Box(-CLIP, CLIP, shape=(arch["obs_dim"],), dtype=np.float32)
    act_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    policy = ActorCriticPolicy(
        obs_space,
        act_space,
        lr_schedule=lambda _: 0.0,
        net_arch=list(arch["net_arch"]),
        activation_fn=ACTIVATIONS[arch["activation"]],
    )
    policy.set_training_mode(False)
    return policy


def save_agent(
    registry: str | Path, policy, norm: ObsNorm, bounds, arch: dict, training: dict, data: dict
) -> str:
    """Register the policy's weights as a new `ppo_sizer` version; returns its id."""

    def write_files(folder: Path) -> list[str]:
        state = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
        torch.save(state, folder / POLICY_FILE)
        spec = {"arch": arch, "bounds": list(bounds), "norm": norm.to_json()}
        _write_synced(folder / AGENT_FILE, json.dumps(spec, indent=2))
        return [AGENT_FILE, POLICY_FILE]

    meta = {"data": data, "training": training, "versions": {"torch": torch.__version__}}
    return ModelRegistry(registry).store(KIND, write_files, meta).id


def load_agent(registry: str | Path, id_or_alias: str) -> SizerAgent:
    """The verified agent (sha256 of every file, feature set), rebuilt from JSON and tensors only."""
    reg = ModelRegistry(registry)
    version_id = _resolve(reg, id_or_alias)
    record = reg.verify(version_id)
    if record.kind != KIND:
        raise RegistryError(f"{version_id} is a {record.kind} model, not a {KIND} agent")
    spec = json.loads((record.path / AGENT_FILE).read_text())
    arch = spec["arch"]
    if arch["obs_dim"] != OBS_DIM:
        raise RegistryError(
            f"{version_id} observes {arch['obs_dim']} values, this build builds {OBS_DIM}; retrain"
        )
    policy = build_policy(arch)
    policy.load_state_dict(torch.load(record.path / POLICY_FILE, weights_only=True))
    return SizerAgent(policy, ObsNorm.from_json(spec["norm"]), tuple(spec["bounds"]), arch, version_id)


def _resolve(reg: ModelRegistry, id_or_alias: str) -> str:
    if id_or_alias != f"{KIND}:latest":
        return id_or_alias
    versions = sorted(p.name for p in (reg.root / KIND).glob(f"{KIND}-*") if (p / META_FILE).is_file())
    if not versions:
        raise RegistryError(f"no {KIND} agents in {reg.root}: run `qt rl train CONFIG` first")
    return versions[-1]
