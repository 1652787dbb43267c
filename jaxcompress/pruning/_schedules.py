"""Sparsity schedules: ``step -> sparsity`` callables."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress.core import validate


def polynomial_sparsity(
  final_sparsity: float,
  *,
  begin_step: int,
  end_step: int,
  initial_sparsity: float = 0.0,
  frequency: int = 1,
  power: float = 3.0,
) -> validate.Schedule:
  """Gradual pruning: sparsity rises from ``initial`` to ``final`` along a polynomial.

  ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n Δt)) ** power`` for
  ``t0 <= t <= t0 + n Δt``, where ``t0 = begin_step``, ``n Δt = end_step - begin_step``
  and ``t`` advances in multiples of ``Δt = frequency`` steps (the sparsity is constant
  in between). Before ``begin_step`` it is ``s_i``; from ``end_step`` on it is ``s_f``.

  Args:
    final_sparsity: ``s_f`` in [0, 1).
    begin_step: ``t0``, step at which pruning starts (>= 0).
    end_step: step at which ``s_f`` is reached (> ``begin_step``).
    initial_sparsity: ``s_i`` in [0, 1).
    frequency: ``Δt``, steps between sparsity changes (>= 1).
    power: the exponent, 3 in the paper (> 0).

  Returns:
    A callable ``step -> float32 sparsity``.

  Raises:
    ValueError: on a sparsity outside [0, 1), ``end_step <= begin_step``,
      ``frequency < 1``, ``frequency > end_step - begin_step`` (the target would be
      reached only at ``end_step`` in one jump, never gradually), or ``power <= 0``.

  References:
    Zhu & Gupta 2017, "To prune, or not to prune", https://arxiv.org/abs/1710.01878.

  Example:
    >>> s = polynomial_sparsity(0.9, begin_step=0, end_step=100, frequency=10)
    >>> [round(float(s(t)), 4) for t in (0, 9, 10, 50, 100, 500)]
    [0.0, 0.0, 0.2439, 0.7875, 0.9, 0.9]
  """
  s_f = validate.check_sparsity("final_sparsity", final_sparsity)
  s_i = validate.check_sparsity("initial_sparsity", initial_sparsity)
  t0 = validate.check_int("begin_step", begin_step, low=0)
  t1 = validate.check_int("end_step", end_step)
  if t1 <= t0:
    raise ValueError(f"end_step must be greater than begin_step={t0}, got end_step={t1}")
  dt = validate.check_int("frequency", frequency, low=1)
  if dt > t1 - t0:
    raise ValueError(
      f"frequency={dt} is larger than the pruning span end_step - begin_step = {t1 - t0}: "
      "the schedule would never change sparsity gradually"
    )
  power = validate.check_float("power", power, low=0.0, low_open=True)

  def schedule(step: jax.Array) -> jax.Array:
    t = jnp.asarray(step, jnp.float32)
    t = t0 + jnp.floor((jnp.clip(t, t0, t1) - t0) / dt) * dt
    progress = jnp.minimum((t - t0) / (t1 - t0), 1.0)
    return jnp.where(jnp.asarray(step) >= t1, s_f, s_f + (s_i - s_f) * (1.0 - progress) ** power)

  return schedule


def constant_sparsity(sparsity: float) -> validate.Schedule:
  """The same sparsity at every step.

  Raises:
    ValueError: if ``sparsity`` is outside [0, 1).

  Example:
    >>> float(constant_sparsity(0.5)(1000))
    0.5
  """
  s = validate.check_sparsity("sparsity", sparsity)
  return lambda step: jnp.full((), s, jnp.float32)


def one_shot_sparsity(sparsity: float, *, at_step: int, initial_sparsity: float = 0.0) -> validate.Schedule:
  """``initial_sparsity`` before ``at_step``, ``sparsity`` from ``at_step`` on.

  Args:
    sparsity: the target in [0, 1).
    at_step: the step whose ``update`` prunes (>= 1; for pruning before training pass
      the constant ``sparsity`` to the compressor instead).
    initial_sparsity: the sparsity before, in [0, 1).

  Raises:
    ValueError: for a sparsity outside [0, 1) or ``at_step < 1``.

  Example:
    >>> s = one_shot_sparsity(0.8, at_step=100)
    >>> [float(s(t)) for t in (0, 99, 100, 101)]
    [0.0, 0.0, 0.800000011920929, 0.800000011920929]
  """
  s_f = validate.check_sparsity("sparsity", sparsity)
  s_i = validate.check_sparsity("initial_sparsity", initial_sparsity)
  t = validate.check_int("at_step", at_step, low=1)
  return lambda step: jnp.where(jnp.asarray(step) >= t, jnp.float32(s_f), jnp.float32(s_i))


def check_reaches(schedule: validate.Schedule, target: float, *, total_steps: int) -> None:
  """Raises if ``schedule`` has not reached ``target`` by the last step of a run.

  A run of ``total_steps`` optimizer steps calls ``update`` with counts ``1 ..
  total_steps``; this checks the value at ``total_steps``, so a schedule whose end lies
  beyond the run (or that never gets there) fails before training instead of leaving a
  silently denser model.

  Args:
    schedule: ``step -> sparsity``.
    target: the sparsity the run must end at.
    total_steps: the run's length (>= 1).

  Raises:
    ValueError: naming the reached value, the target and the run's length.

  Example:
    >>> s = polynomial_sparsity(0.9, begin_step=0, end_step=1000)
    >>> check_reaches(s, 0.9, total_steps=500)
    Traceback (most recent call last):
    ...
    ValueError: the schedule reaches sparsity 0.7875 at the last step 500, not the target 0.9: end the schedule by step 500
  """
  validate.check_sparsity("target", target)
  n = validate.check_int("total_steps", total_steps, low=1)
  reached = float(schedule(jnp.asarray(n, jnp.int32)))
  if abs(reached - target) > 1e-6:
    raise ValueError(
      f"the schedule reaches sparsity {reached:.4g} at the last step {n}, not the target {target}: "
      f"end the schedule by step {n}"
    )
