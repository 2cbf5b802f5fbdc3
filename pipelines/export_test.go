package pipelines

// EndStages is endStages, for the benchmarks' pipelines.
var EndStages = endStages
