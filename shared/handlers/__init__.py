"""The four functions' logic, one module each, as a `FunctionSpec` named SPEC.

A handler is `def handler(ctx: Context[Services]) -> None`. It reads `ctx.event.payload`,
decides with plain functions from `shared`, and writes its state, its dedupe key and the
events it emits in one atomic step: either `ctx.commit(write, events)` (MULTI) or a Lua script
given the dedupe token `ctx.once`. It raises PermanentError or TemporaryError
for the adapter to map to HTTP. The runtime flushes the outbox after the handler returns.
"""
