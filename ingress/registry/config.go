package registry

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"

	"cloud.google.com/go/bigtable"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/schemas"
)

// writeConfig makes cfg the current config and adds it to the history,
// dropping the version that falls out of the last ConfigVersionsKept.
func writeConfig(w writer, cfg DeviceConfig) {
	w.replace(schemas.FamilyDeviceConfig, colVersion, []byte(strconv.FormatInt(cfg.Version, 10)))
	w.replaceJSON(schemas.FamilyDeviceConfig, colCurrent, cfg)
	w.replaceJSON(schemas.FamilyConfigHistory, historyColumn(cfg.Version), cfg)
	if old := cfg.Version - ConfigVersionsKept; old >= 1 {
		w.m.DeleteCellsInColumn(schemas.FamilyConfigHistory, historyColumn(old))
	}
}

// ModifyConfig makes data the device's next config version and returns it
// (IoT Core's modifyCloudToDeviceConfig). With versionToUpdate > 0 the
// update happens only if that is the current version; otherwise it fails
// with a *VersionConflictError (ErrFailedPrecondition), so that two admins
// who read the same version cannot both write the next one. With 0 it
// applies to whatever version is current.
//
// The check and the write are one Bigtable CheckAndMutateRow on the device
// row, conditional on the current version's cell still holding the value
// read: no other write can come between them.
func (s *Store) ModifyConfig(ctx context.Context, dp iotcore.DevicePath, versionToUpdate int64, data []byte) (DeviceConfig, error) {
	if err := validDevicePath(dp); err != nil {
		return DeviceConfig{}, fmt.Errorf("registry: modify config: %w", err)
	}
	if versionToUpdate < 0 {
		return DeviceConfig{}, fmt.Errorf("registry: modify config of %s: %w: versionToUpdate %d is negative", dp, ErrInvalidArgument, versionToUpdate)
	}
	if len(data) > MaxConfigBytes {
		return DeviceConfig{}, fmt.Errorf("registry: modify config of %s: %w: %d bytes, at most %d", dp, ErrInvalidArgument, len(data), MaxConfigBytes)
	}
	defer s.cache.invalidateDevice(dp)
	// With a version to update there is nothing to read first: the
	// condition is the check. With 0 the current version is read, and a
	// write that lost a race to another is retried on the new version.
	const attempts = 10
	for range attempts {
		current := versionToUpdate
		if versionToUpdate == 0 {
			var err error
			if current, err = s.configVersion(ctx, dp); err != nil {
				return DeviceConfig{}, err
			}
		}
		cfg := DeviceConfig{Version: current + 1, CloudUpdateTime: s.now().UTC(), BinaryData: data}
		w := s.writer()
		writeConfig(w, cfg)
		unchanged := bigtable.ChainFilters(column(schemas.FamilyDeviceConfig, colVersion), latest,
			bigtable.ValueFilter(exactly(strconv.FormatInt(current, 10))))
		var applied bool
		err := s.table.Apply(ctx, deviceKey(dp), bigtable.NewCondMutation(unchanged, w.m, nil), bigtable.GetCondMutationResult(&applied))
		if err != nil {
			return DeviceConfig{}, fmt.Errorf("registry: modify config of %s in %s: %w", dp, s.name, err)
		}
		if applied {
			return cfg, nil
		}
		if versionToUpdate != 0 {
			// Say what the version is instead, or that the device is gone.
			actual, err := s.configVersion(ctx, dp)
			if err != nil {
				return DeviceConfig{}, err
			}
			return DeviceConfig{}, &VersionConflictError{Device: dp, VersionToUpdate: versionToUpdate, Current: actual}
		}
	}
	return DeviceConfig{}, fmt.Errorf("registry: modify config of %s: %w: the version kept changing", dp, ErrAborted)
}

// configVersion reads the device's current config version.
func (s *Store) configVersion(ctx context.Context, dp iotcore.DevicePath) (int64, error) {
	row, err := s.table.ReadRow(ctx, deviceKey(dp), bigtable.RowFilter(bigtable.ChainFilters(column(schemas.FamilyDeviceConfig, colVersion), latest)))
	if err != nil {
		return 0, fmt.Errorf("registry: read config version of %s from %s: %w", dp, s.name, err)
	}
	items := row[schemas.FamilyDeviceConfig]
	if len(items) == 0 {
		return 0, fmt.Errorf("registry: device %s: %w", dp, ErrNotFound)
	}
	v, err := strconv.ParseInt(string(items[0].Value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("registry: device %s: stored config version %q: %w", dp, items[0].Value, err)
	}
	return v, nil
}

// ConfigVersions returns the device's kept config versions, newest first
// (IoT Core's configVersions.list).
func (s *Store) ConfigVersions(ctx context.Context, dp iotcore.DevicePath) ([]DeviceConfig, error) {
	if err := validDevicePath(dp); err != nil {
		return nil, fmt.Errorf("registry: config versions: %w", err)
	}
	filter := bigtable.ChainFilters(
		bigtable.InterleaveFilters(column(schemas.FamilyDeviceConfig, colVersion), family(schemas.FamilyConfigHistory)),
		latest)
	row, err := s.table.ReadRow(ctx, deviceKey(dp), bigtable.RowFilter(filter))
	if err != nil {
		return nil, fmt.Errorf("registry: read config versions of %s from %s: %w", dp, s.name, err)
	}
	if len(row[schemas.FamilyDeviceConfig]) == 0 {
		return nil, fmt.Errorf("registry: device %s: %w", dp, ErrNotFound)
	}
	var out []DeviceConfig
	for _, item := range row[schemas.FamilyConfigHistory] {
		var cfg DeviceConfig
		if err := decodeJSON("config version "+item.Column, item.Value, &cfg); err != nil {
			return nil, fmt.Errorf("registry: device %s: %w", dp, err)
		}
		out = append(out, cfg)
	}
	slices.SortFunc(out, func(a, b DeviceConfig) int { return cmp.Compare(b.Version, a.Version) })
	return out, nil
}
