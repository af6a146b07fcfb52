// Command pierrec_lz4_read decompresses an LZ4 object from stdin to stdout exactly as WAL-G
// reads one (internal/compression/lz4: lz4.NewReader from pierrec/lz4 v4, then io.Copy).
//
// tests/unit/test_lz4frame.py runs it on walg's objects when WALG_TEST_PIERREC_LZ4_READER
// names the built binary:
//
//	go build -o /tmp/pierrec_lz4_read .    (module cache or a replace directive for pierrec/lz4)
package main

import (
	"io"
	"os"

	"github.com/pierrec/lz4/v4"
)

func main() {
	if _, err := io.Copy(os.Stdout, lz4.NewReader(os.Stdin)); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
