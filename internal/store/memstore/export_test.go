package memstore

// MappedBytes returns the bytes s holds outside the Go heap (offHeap).
func MappedBytes(s *Store) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.convs.mem.mapped
}
