"""Optuna samplers by name (`search.algorithm`), each seeded by `search.seed`; which of them can
optimise several objectives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from trainables.registry import Registry

if TYPE_CHECKING:
    import optuna


class SamplerFactory(Protocol):
    """Makes the Optuna sampler of one study execution (a `SAMPLERS` entry)."""

    def __call__(self, seed: int) -> optuna.samplers.BaseSampler:
        """A new sampler.

        Args:
            seed: `search.seed`; the same seed must give the same suggestions for the same
                trials told.

        Returns:
            An Optuna sampler that Ray can pickle (Ray pickles the searcher with the Tuner and at
            every snapshot, and `tuner resume` unpickles it: see picklable_samplers).
        """
        ...


SAMPLERS: Registry[SamplerFactory] = Registry("search.algorithm")


@SAMPLERS.register("tpe")
def tpe(seed: int) -> optuna.samplers.BaseSampler:
    """Multivariate TPE, with a constant liar so concurrent trials do not all ask alike."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


@SAMPLERS.register("nsgaii")
def nsgaii(seed: int) -> optuna.samplers.BaseSampler:
    """NSGA-II, the genetic algorithm for several objectives (one objective works too)."""
    from tuner.driver.picklable_samplers import NSGAIISampler

    return NSGAIISampler(seed=seed)


@SAMPLERS.register("random")
def random(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("cmaes")
def cmaes(seed: int) -> optuna.samplers.BaseSampler:
    """CMA-ES; categorical entries fall back to an independent random sampler."""
    import optuna

    return optuna.samplers.CmaEsSampler(
        seed=seed,
        independent_sampler=optuna.samplers.RandomSampler(seed=seed),
        warn_independent_sampling=False,
    )


@SAMPLERS.register("qmc")
def qmc(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)


#: the samplers that can optimise several objectives (CMA-ES cannot: Optuna refuses it)
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "nsgaii", "random", "qmc")


def make_sampler(algorithm: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler named `algorithm`, seeded; an unknown name lists the known ones."""
    return SAMPLERS.get(algorithm)(seed)
