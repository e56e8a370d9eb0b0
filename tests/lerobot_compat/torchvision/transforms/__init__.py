"""Only the name LeRobot's utils import; a plain dataset read converts no PIL image through it."""


class ToTensor:
    def __call__(self, image):
        raise NotImplementedError("not part of the stand-in (tests/lerobot_compat)")
