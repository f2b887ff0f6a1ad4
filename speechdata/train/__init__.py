"""The bundled trainer: tiny SALM / BESTOW models, Lightning module, exp manager, optimisers, EMA."""
