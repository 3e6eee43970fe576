"""The training side (TensorFlow + Keras): losses, the trainer and its recipes, callbacks for run
folders and resume, and tf.distribute strategies. `cfdrnn train` / `tools/train.py` drive it."""
from .trainer import (RECIPES, CFDRNNTrainer, Recipe, build_trainer, cpu_has_bf16, current_learning_rate,
                      get_recipe, load_network_weights, make_optimizer, make_schedule, plain_network_copy,
                      resolve_precision, resumable_training_dataset, save_network_atomically, scale_output_heads,
                      set_precision, steps_for)

__all__ = ["CFDRNNTrainer", "RECIPES", "Recipe", "build_trainer", "cpu_has_bf16", "current_learning_rate",
           "get_recipe", "load_network_weights", "make_optimizer", "make_schedule", "plain_network_copy",
           "resolve_precision", "resumable_training_dataset", "save_network_atomically", "scale_output_heads",
           "set_precision", "steps_for"]
