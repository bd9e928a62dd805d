// The status-bar item shown while a run trains: step, loss and time left; a click opens
// the training panel.

import * as vscode from 'vscode';

function duration(s: number): string {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h ? `${h}h${String(m).padStart(2, '0')}m` : m ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
}

export class TrainingStatusBar implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem('loraStudio.training', vscode.StatusBarAlignment.Left, 50);

  constructor() {
    this.item.name = 'LoRA Studio Training';
    this.item.command = 'loraStudio.trainingView.focus';
  }

  preparing(label: string): void {
    this.item.text = '$(loading~spin) LoRA: preparing data';
    this.item.tooltip = `Preparing ${label}`;
    this.item.show();
  }

  update(p: { step: number; stepsTotal: number | null; loss: number | null; etaSeconds: number | null; label: string }): void {
    const steps = p.stepsTotal ? `${p.step}/${p.stepsTotal}` : String(p.step);
    const loss = p.loss === null ? '' : ` · loss ${Number.isFinite(p.loss) ? p.loss.toFixed(3) : 'NaN'}`;
    const eta = p.etaSeconds === null ? '' : ` · ${duration(p.etaSeconds)} left`;
    this.item.text = `$(pulse) LoRA ${steps}${loss}${eta}`;
    this.item.tooltip = `${p.label}: step ${steps}${loss}${eta}. Click to open the training panel.`;
    this.item.show();
  }

  hide(): void {
    this.item.hide();
  }

  dispose(): void {
    this.item.dispose();
  }
}
