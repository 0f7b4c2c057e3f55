"""Figures: pictures of kept tokens (`pictures`) and accuracy-vs-K plots
(`plots`). Imports nothing else of the package, so evaluation, the demo and
experiments can all use it."""
