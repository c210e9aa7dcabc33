"""The shapes world: procedurally rendered scenes whose every concept is known per pixel."""

from diffdict.world.captions import (CONTEXT_LENGTH, VOCAB, CaptionSpec, ObjectSpec, caption, encode_prompts,
                                     parse_caption, sample_prompts, scene_for_caption, with_random_omissions)
from diffdict.world.concepts import BACKGROUNDS, COLORS, FAMILIES, REGIONS, SHAPES, SIZES, TEXTURES, concept_names
from diffdict.world.render import Rendered, concept_grid, render, render_batch
from diffdict.world.scene import (DEFAULT_SIZE, HELDOUT_PAIRS, SPLITS, Scene, SceneObject, sample_scene, sample_scenes,
                                  single_object_scene)

__all__ = [name for name in dir() if not name.startswith("_")]
