from effdet.config.schema import Config, register_schema
from effdet.config.validate import validate

__all__ = ["Config", "register_schema", "validate"]
