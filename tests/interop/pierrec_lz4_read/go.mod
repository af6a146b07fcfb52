module pierrec_lz4_read

go 1.19

// The version WAL-G pins in its go.mod.
require github.com/pierrec/lz4/v4 v4.1.28
