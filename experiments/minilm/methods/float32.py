"""The float32 model as loaded: the reference row (cosine 1 by construction)."""

from experiments.minilm.methods.base import Context, Method, Result


def run(ctx: Context) -> Result:
  return Result(ctx.params, ctx.embed(ctx.params, ctx.apply))


METHODS = (Method("float32", run, order=0, description="the pretrained float32 model", quick=True),)
