// Core modules the extension needs only once the user does something (opens the panel,
// starts a run). Loading them on first use instead of at activation keeps activation cheap;
// the types stay static.

type RunsModule = typeof import('../core/runs/runs');
type ConfigModule = typeof import('../core/config');
type ProcessModule = typeof import('../core/runtime/process');
type PanelModelModule = typeof import('./panelModel');

let runs: RunsModule | undefined;
let config: ConfigModule | undefined;
let processLayer: ProcessModule | undefined;
let panelModel: PanelModelModule | undefined;

export const coreRuns = (): RunsModule => (runs ??= require('../core/runs/runs') as RunsModule);
export const coreConfig = (): ConfigModule => (config ??= require('../core/config') as ConfigModule);
export const coreProcess = (): ProcessModule => (processLayer ??= require('../core/runtime/process') as ProcessModule);
export const panelModelModule = (): PanelModelModule => (panelModel ??= require('./panelModel') as PanelModelModule);
