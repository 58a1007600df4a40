"""Layer 3: tasks (data generators with splits, metrics and baselines).

Importing this package registers the built-in tasks.
"""

from anyformer.tasks import (  # noqa: F401
    algorithmic,
    audio,
    audio_folder,
    code_completion,
    code_defects,
    code_lm,
    code_search,
    forecast,
    graph_atlas,
    graph_file,
    graph_motifs,
    graph_sbm,
    graphs,
    icl,
    icl_boolean,
    icl_functions,
    icl_series,
    icl_uncertainty,
    image_folder,
    images,
    knowledge,
    pose,
    recall,
    series_classification,
    shapes,
    super_resolution,
    symbolic,
    table,
    text,
    text_corpus,
    text_files,
    translation,
)
