from effdet.registry import Registry

MODES = Registry("run mode")
