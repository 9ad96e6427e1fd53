"""`harness run --repeat K` / `--seeds a,b,c`: which seeds each variant is trained with, and the
(variant, seed) jobs that become child runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from harness.config import SEED_LIMIT, TrainConfig
from harness.errors import ConfigError


@dataclass(frozen=True)
class SeedPlan:
    """How often each variant is trained: `--repeat K` (K seeds counting up from the variant's
    own config seed) or `--seeds a,b,c` (these seeds for every variant). Neither means one run
    per variant at its configured seed, as without repeats."""

    repeat: int | None = None
    seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.repeat is not None and self.seeds is not None:
            raise ConfigError("repeat and seeds exclude each other: use repeat=K (K seeds from each "
                              "variant's own seed) or seeds=[a, b, c], not both.")
        if self.repeat is not None and self.repeat < 1:
            raise ConfigError(f"repeat must be at least 1 (got {self.repeat}).")
        if self.seeds is not None:
            if not self.seeds:
                raise ConfigError("seeds needs at least one seed, e.g. seeds=[0, 1, 2].")
            if len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(f"seeds lists a seed twice ({', '.join(map(str, self.seeds))}); "
                                  "give distinct seeds.")
            if any(not 0 <= s < SEED_LIMIT for s in self.seeds):  # the same range as TrainConfig.seed
                raise ConfigError(f"seeds must be integers from 0 to {SEED_LIMIT - 1}.")

    @classmethod
    def parse(cls, repeat: int | None, seeds: str | None) -> SeedPlan:
        """The plan for the `--repeat` / `--seeds` command-line values (`seeds` as "0,1,2")."""
        parsed = None
        if seeds is not None:
            try:
                parsed = tuple(int(part) for part in seeds.replace(" ", "").split(",") if part)
            except ValueError:
                raise ConfigError(f"Cannot parse seeds '{seeds}': "
                                  "expected comma-separated integers such as 0,1,2.") from None
        return cls(repeat, parsed)

    @property
    def repeated(self) -> bool:
        return self.repeat is not None or self.seeds is not None

    def seeds_for(self, config: TrainConfig) -> list[int]:
        """The seeds `config`'s variant is trained with."""
        if self.seeds is not None:
            return list(self.seeds)
        return [config.seed + i for i in range(self.repeat or 1)]

    def check(self, configs: dict[str, TrainConfig]) -> None:
        """Raise HarnessError if `--repeat` counts some variant's seeds past the largest seed
        (`--seeds` and config seeds are checked when given); call it before any run is created."""
        for variant, config in configs.items():
            last = self.seeds_for(config)[-1]
            if last >= SEED_LIMIT:
                raise ConfigError(f"{self.describe()} from seed {config.seed} of variant '{variant}' "
                                  f"reaches seed {last}, "
                                  f"past the largest seed {SEED_LIMIT - 1}; use a smaller seed or seeds=[a, b, c].")

    def to_params(self) -> dict[str, str]:
        """Parent-run params that record the plan (so `--resume` can follow it)."""
        if self.seeds is not None:
            return {"seeds": ",".join(map(str, self.seeds))}
        return {"repeat": str(self.repeat)} if self.repeat is not None else {}

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> SeedPlan:
        """The plan a parent run recorded with `to_params`."""
        return cls.parse(int(params["repeat"]) if "repeat" in params else None, params.get("seeds"))

    def describe(self) -> str:
        if self.seeds is not None:
            return f"seeds=[{', '.join(map(str, self.seeds))}]"
        return f"repeat={self.repeat}" if self.repeat is not None else "no repeat or seeds"


@dataclass(frozen=True)
class Job:
    """One child run to train: a variant at one seed."""

    variant: str
    config: TrainConfig
    repeated: bool

    @property
    def label(self) -> str:
        """Run name and progress prefix: "lenet", or "lenet seed=1" when repeated."""
        return f"{self.variant} seed={self.config.seed}" if self.repeated else self.variant


def plan_jobs(configs: dict[str, TrainConfig], plan: SeedPlan) -> list[Job]:
    """Every (variant, seed) to train, seed round by seed round: an interrupted repeated run
    already holds complete comparisons for its first rounds."""
    plan.check(configs)  # one clear line rather than a TrainConfig error for seed+i
    per_variant = {v: plan.seeds_for(c) for v, c in configs.items()}
    rounds = max(len(s) for s in per_variant.values())
    return [Job(v, replace(c, seed=per_variant[v][i]) if plan.repeated else c, plan.repeated)
            for i in range(rounds) for v, c in configs.items()]


