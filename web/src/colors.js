// Aircraft colours (RGBA), shared by the feed worker (drawing) and the page (legend).
export const PHASE_COLORS = {
  climb: [46, 204, 113, 255],
  cruise: [52, 152, 219, 255],
  descent: [243, 156, 18, 255],
  ground: [170, 170, 190, 255],
};
export const UNKNOWN_COLOR = [236, 240, 241, 255]; // airborne, phase not known yet
export const VEHICLE_COLOR = [241, 224, 90, 255];
export const EMERGENCY_COLOR = [231, 60, 60, 255];
export const LEGEND = [
  ["climb", PHASE_COLORS.climb],
  ["cruise", PHASE_COLORS.cruise],
  ["descent", PHASE_COLORS.descent],
  ["ground", PHASE_COLORS.ground],
  ["airborne", UNKNOWN_COLOR],
  ["vehicle", VEHICLE_COLOR],
  ["emergency", EMERGENCY_COLOR],
];
/** Squawk codes that mean an emergency: hijack, radio failure, general. */
export const EMERGENCY_SQUAWKS = new Set(["7500", "7600", "7700"]);
