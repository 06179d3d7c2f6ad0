"""Reinforcement-learned position sizing (SPEC section 8): a PPO agent that scales the rule-based size.

observation.py  the one observation builder, shared by the training environment and the strategy
env.py          SizingEnv, a gymnasium environment over stored signals and catalog bars
agent.py        saving / loading an agent's weights in the model registry (no unpickling)
train.py        `qt rl train` and `qt rl evaluate`
"""
