"""The label update (E-step): pure numpy, no Ray, no network."""

from boxsup.assign.assign import Assignment, BoxedPool, EmptyPoolError, assign_labels, assignment_costs
from boxsup.assign.rule import LabelUpdateRule
from boxsup.assign.sampling import image_rng, sample_lowest_k

__all__ = ["Assignment", "BoxedPool", "EmptyPoolError", "LabelUpdateRule", "assign_labels", "assignment_costs", "image_rng",
           "sample_lowest_k"]
